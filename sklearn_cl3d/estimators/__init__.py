"""sklearn_cl3d subpackage."""
