"""Tools on top of the core and the backends: evaluation, attribution, comparison, the atom
browser, plots and the command line."""
