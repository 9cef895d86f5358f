"""Fixtures shared by every test area, registered once here: one API emulator for the whole run, however many
folders use it (a fixture imported into several conftest.py files would be a separate fixture, started per folder)."""

pytest_plugins = ["tests.support.kube", "tests.support.operator_process", "tests.support.object_stores"]
