"""What the book's chapters need from flatbook beyond its public modules, in one place.

The chapters (``book/*.md``) import only public names (no ``flatbook._…`` module); the helpers
a page needs are re-exported here with their documentation:

- :func:`check_parameters` — validate a chapter's papermill parameters in its first code cell,
  one ``ValueError`` naming the parameter, what is allowed and how to set it
  (``papermill … -p NAME VALUE``).

>>> from flatbook.book import check_parameters
>>> n_networks = 3
>>> check_parameters({"n_networks": n_networks}, n_networks="int >= 1")
"""

from __future__ import annotations

from flatbook._validate import check_parameters

__all__ = ["check_parameters"]
