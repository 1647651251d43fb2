"""kdistill on Ray: the ``ray`` executor (``--executor ray --workers N [--address ADDR]``).

Installed as ``kdistill_ray`` with the optional extra ``kdistill[ray]``, and found through the ``kdistill``
entry-point group like any plugin; the core never imports it. See ``docs/scaling.md``.
"""
