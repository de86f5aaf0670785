"""The allowed values of every option the command line offers a fixed list for, in one place.

No imports, like `defaults`: the command line builds its parser from these two modules and the stage
table (`bilaf.stages.table`, standard library only) without loading torch, pandas or Dagster
(`bilaf --help` answers at once). The modules that implement an option use the same tuple (sources,
pool, ActiveFT) or are checked against it by tests/dagster_project/cli/test_cli_startup.py (the
registries: selection methods, core methods, variants).
"""

SPLITS = ("train", "test")
SOURCES = ("fashion-mnist", "cifar10", "cifar100", "image-folder")
ON_UNREADABLE = ("skip", "fail")

# selection (bilaf.selection): list_methods(), CORE_METHODS, VARIANTS, ActiveFT loss forms
SELECTION_METHODS = ("activeft", "bilaf", "kcenter", "kmeans", "margin", "random")
CORE_METHODS = ("activeft", "kmeans", "kcenter", "random")
VARIANTS = ("default", "repo")
ACTIVEFT_LOSSES = ("code", "paper")
