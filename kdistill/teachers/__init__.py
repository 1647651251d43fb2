"""Teachers: the generic token transformers domains build theirs from (``transformer``) and the one place where a
teacher architecture is looked up by name (``lookup``)."""
