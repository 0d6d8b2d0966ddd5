"""Online prefix changes, for big tables: the change and its SQL (:mod:`.change`), the
trigger that keeps a staging column current (:mod:`.trigger`), the index step
(:mod:`.index_step`) and the run inside a migration (:mod:`.run`)."""
