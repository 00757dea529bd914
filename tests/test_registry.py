import pytest

from gru_suite import registry
from gru_suite.errors import UserError
from gru_suite.task import TaskPlugin


def test_builtin_task_is_registered_through_its_entry_point():
    entry = registry.installed_tasks()["forecasting"]
    assert entry.distribution == "gru-suite"
    assert issubclass(entry.load(), TaskPlugin)
    assert (entry.config_dir() / "task" / "forecasting.yaml").is_file()
    assert f"file://{entry.config_dir()}" in registry.config_search_path()


def test_broken_plugin_is_one_line_naming_task_package_and_cause():
    broken = registry.TaskEntry("broken", "gru_suite_no_such_pkg.task:Task", "broken-dist")
    with pytest.raises(UserError) as err:
        broken.load()
    message = str(err.value)
    assert "\n" not in message
    assert "'broken'" in message and "'broken-dist'" in message and "ModuleNotFoundError" in message
    assert broken.config_dir() is None
    assert broken.description() == "(no config found)"
    with pytest.raises(UserError, match=r"task 'broken' from package 'broken-dist' ships no conf/task/broken\.yaml "
                       r"beside gru_suite_no_such_pkg\.task: a plugin's configs must be installed with it"):
        broken.require_config_file()


def test_broken_plugin_does_not_hide_the_others(monkeypatch):
    broken = registry.TaskEntry("broken", "gru_suite_no_such_pkg.task:Task", "broken-dist")
    tasks = {**registry.installed_tasks(), "broken": broken}
    monkeypatch.setattr(registry, "installed_tasks", lambda: tasks)
    listing = registry.format_task_list()
    assert "forecasting" in listing and "broken" in listing
    assert registry.get_task("forecasting").load().__name__ == "ForecastingTask"


def test_unknown_task_lists_installed():
    with pytest.raises(UserError, match="unknown task 'nope'; installed tasks: .*forecasting"):
        registry.get_task("nope")
