"""Signals of runs, for the apps that follow them (fleet plans).

run_finished(sender=MigrationRun, run=run): sent by the executor once a run has reached a
final status (succeeded, failed, rolled back, cancelled) and that status is saved. Sent
robustly (a receiver's exception is logged, never raised into the run): receivers should be
quick and hand real work to a task. A queued run cancelled before it started
(services.cancel) never reaches the executor and sends nothing.
"""
from django.dispatch import Signal

run_finished = Signal()
