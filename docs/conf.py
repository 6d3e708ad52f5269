"""Sphinx configuration for the sklearn_cl3d documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` from
the repository root. The build must work offline: nothing here fetches
anything from the network.
"""

import os
import sys
from datetime import date

# Import the package from the working tree even when it is not installed.
sys.path.insert(0, os.path.abspath(".."))

# Executing the gallery must never try to open a window.
os.environ.setdefault("MPLBACKEND", "Agg")

import sklearn_cl3d  # noqa: E402

# -- Project information -----------------------------------------------------

project = "sklearn_cl3d"
author = "The sklearn_cl3d developers"
copyright = f"{date.today().year}, {author}"
release = sklearn_cl3d.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
# sphinx.ext.intersphinx is deliberately not enabled: it downloads the
# inventories of the mapped projects, and the build machines have no network.
# References into scikit-learn's docs that appear in inherited docstrings are
# resolved offline by ``_resolve_sklearn_refs`` below.

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
language = "en"

# Broken cross-references to third-party objects (torch, skorch, numpy) are
# expected without intersphinx; keep nitpicky mode off so they render as plain
# text instead of failing the build.
nitpicky = False

# -- autodoc / autosummary ---------------------------------------------------

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    # Never pull in members inherited from skorch's NeuralNet or
    # torch.nn.Module: their docstrings are not numpydoc-formatted.
    "inherited-members": False,
    "member-order": "bysource",
}
autodoc_typehints = "none"  # types are in the numpydoc "Parameters" sections
autoclass_content = "class"

# -- numpydoc ----------------------------------------------------------------

numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False
# No docstring validation during the build (run it in the test suite if
# wanted); it would otherwise report style issues as build warnings.
numpydoc_validation_checks = set()

# -- sphinx-gallery ----------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "within_subsection_order": "FileNameSortKey",
    # "Gallery examples using X" sections on the API pages (the minigallery
    # directive in the autosummary templates), and links from the example code
    # to the local API pages; neither needs the network.
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("sklearn_cl3d",),
    "reference_url": {"sklearn_cl3d": None},
}

# -- HTML output -------------------------------------------------------------

try:
    import pydata_sphinx_theme  # noqa: F401
except ImportError:  # pragma: no cover - fallback for minimal environments
    html_theme = "alabaster"
    html_theme_options = {}
else:
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navigation_with_keys": False,
        "show_toc_level": 2,
        "secondary_sidebar_items": ["page-toc"],
    }

html_title = f"sklearn_cl3d {release}"
html_static_path = ["_static"]
html_show_sourcelink = False

# -- Offline resolution of scikit-learn references ---------------------------
#
# Methods inherited from scikit-learn/skorch (``set_fit_request``) carry
# ``:ref:`sklearn:<label>``` roles that only intersphinx can resolve. Turn the
# labels we know into plain links to the scikit-learn site, and any other
# ``sklearn:`` label into a link to its search page, so that these third-party
# docstrings neither need the network nor produce "undefined label" warnings.

_SKLEARN_URL = "https://scikit-learn.org/stable/"
_SKLEARN_LABELS = {
    "metadata_routing": "metadata_routing.html",
    "df_output_transform": "auto_examples/miscellaneous/plot_set_output.html",
}


def _resolve_sklearn_refs(app, env, node, contnode):
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("sklearn:"):
        return None
    from docutils import nodes

    label = target.split(":", 1)[1]
    page = _SKLEARN_LABELS.get(label, f"search.html?q={label}")
    text = contnode.astext()
    if text == target:
        text = "scikit-learn: " + label.replace("_", " ")
    ref = nodes.reference("", "", internal=False, refuri=_SKLEARN_URL + page)
    ref += nodes.inline(text, text)
    return ref


def setup(app):
    app.connect("missing-reference", _resolve_sklearn_refs)
