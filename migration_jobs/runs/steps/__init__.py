"""The steps of runs, by kind. Each records its work around one engine call, is idempotent
(a resumed run re-enters it) and has a rollback that undoes what it changed."""
