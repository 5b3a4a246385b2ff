"""Runs: a MigrationRun executed step by step (executor), with what its steps share (context),
which steps each kind of run has (plans) and the steps themselves (steps/, by kind)."""
