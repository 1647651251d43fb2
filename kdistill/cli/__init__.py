"""The ``kdistill`` command line: the root group and ``main`` (``app``), the shared options (``options``) and one
module per core verb, registered by ``kdistill.plugins.builtin``. Commands parse, call the library and print."""
