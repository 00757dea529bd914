import re
from types import SimpleNamespace

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
    assert broken.description() == "(no conf/task/broken.yaml found)"
    with pytest.raises(UserError, match=r"^task 'broken' from package 'broken-dist' failed to load "
                       r"\(gru_suite_no_such_pkg\.task:Task\): ModuleNotFoundError"):  # misspelt, not "no configs"
        broken.require_config_file()


def test_a_plugin_package_without_configs_is_told_to_ship_them(tmp_path, monkeypatch):
    (tmp_path / "configless_plugin").mkdir()
    (tmp_path / "configless_plugin" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"^task 'bare' from package 'bare-dist' ships no conf/task/bare\.yaml beside "
                       r"configless_plugin\.task: a plugin's configs must be installed with it"):
        registry.TaskEntry("bare", "configless_plugin.task:Task", "bare-dist").require_config_file()


def write_files(root, files: dict[str, str]) -> None:
    """Write each of `files` (path under `root`: text), making its folders."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_a_config_in_a_package_above_the_entry_points_module_is_named_where_it_must_be(tmp_path, monkeypatch):
    write_files(tmp_path, {"nested_plugin/__init__.py": "", "nested_plugin/tasks/__init__.py": "",
                           "nested_plugin/conf/task/nest.yaml": "name: nest\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "nested_plugin" / "conf" / "task" / "nest.yaml"
    with pytest.raises(UserError, match=rf"^task 'nest' from package 'nest-dist': its config is "
                       rf"{re.escape(str(config))}, but a task's conf/ folder sits beside its entry "
                       r"point's module nested_plugin\.tasks\.parity: move its config \(and its presets and "
                       r"trainer defaults\) into nested_plugin/tasks/conf/$"):
        registry.TaskEntry("nest", "nested_plugin.tasks.parity:Task", "nest-dist").require_config_file()


def test_an_entry_point_named_otherwise_than_its_packages_task_config_names_the_config(tmp_path, monkeypatch):
    write_files(tmp_path, {"renamed_plugin/__init__.py": "", "renamed_plugin/conf/task/freq_trend.yaml":
                           "name: freq_trend\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"^task 'freqtrend' from package 'freq-dist': its conf/task/ beside "
                       r"renamed_plugin\.task holds freq_trend\.yaml, not freqtrend\.yaml: an entry point's name is "
                       r"its task config's file name \(and the config's `name`\): rename one, or ship the missing "
                       r"config$"):
        registry.TaskEntry("freqtrend", "renamed_plugin.task:Task", "freq-dist").require_config_file()


def test_a_plugin_failing_inside_its_own_code_is_named_with_file_and_line(tmp_path, monkeypatch):
    package = tmp_path / "half_written_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text("from half_written_plugin import helper\n\nclass Task:\n    pass\n")
    (package / "helper.py").write_text("\nvalue = undefined_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as err:
        registry.TaskEntry("half", "half_written_plugin.task:Task", "half-dist").load()
    assert str(err.value).endswith(f"NameError: name 'undefined_name' is not defined (at {package / 'helper.py'}:2)")


def test_a_plugin_failing_inside_a_library_is_named_at_its_own_line(tmp_path, monkeypatch):
    package = tmp_path / "library_calling_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text("import json\n\nSETTINGS = json.loads('{not json')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as err:
        registry.TaskEntry("lib", "library_calling_plugin.task:Task", "lib-dist").load()
    assert str(err.value).endswith(f"(at {package / 'task.py'}:3)")  # not json's decoder.py


def test_a_parent_package_that_fails_to_import_is_named_not_taken_for_a_missing_config(tmp_path, monkeypatch):
    tasks = tmp_path / "parent_fails" / "tasks"
    (tasks / "conf" / "task").mkdir(parents=True)
    (tasks / "conf" / "task" / "foo.yaml").write_text("name: foo\n")
    (tasks / "__init__.py").write_text("")
    (tasks / "foo.py").write_text("class Task:\n    pass\n")
    (tmp_path / "parent_fails" / "__init__.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"task 'foo' from package 'foo-dist' failed to load .*ModuleNotFoundError: "
                                        r"No module named 'not_installed_dependency'"):
        registry.TaskEntry("foo", "parent_fails.tasks.foo:Task", "foo-dist").require_config_file()


def test_a_task_config_that_is_not_a_mapping_does_not_break_the_task_list(tmp_path, monkeypatch):
    conf = tmp_path / "listed_plugin" / "conf" / "task"
    conf.mkdir(parents=True)
    (tmp_path / "listed_plugin" / "__init__.py").write_text("")
    (conf / "odd.yaml").write_text("- a list\n- not a mapping\n")
    (conf / "bare.yaml").write_text("name: bare\ndescription:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    odd = registry.TaskEntry("odd", "listed_plugin.task:Task", "odd-dist")
    bare = registry.TaskEntry("bare", "listed_plugin.task:Task", "bare-dist")
    tasks = {**registry.installed_tasks(), "odd": odd, "bare": bare}
    monkeypatch.setattr(registry, "installed_tasks", lambda: tasks)
    listing = registry.format_task_list()
    assert "forecasting" in listing and "is not a mapping of keys" in listing
    assert bare.description() == f"(no description in {conf / 'bare.yaml'})"


def test_a_task_whose_config_is_no_yaml_is_one_line_naming_the_file(tmp_path, monkeypatch):
    conf = tmp_path / "yaml_slip_plugin" / "conf"
    for group in ("task", "task_trainer", "experiment"):
        (conf / group).mkdir(parents=True)
    (tmp_path / "yaml_slip_plugin" / "__init__.py").write_text("")
    (conf / "task" / "slip.yaml").write_text("name: slip\n")
    (conf / "experiment" / "fast.yaml").write_text("task:\n  data: [unclosed\n")  # read only when chosen
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = registry.TaskEntry("slip", "yaml_slip_plugin.task:Task", "slip-dist")
    assert entry.require_config_file() == conf / "task" / "slip.yaml"
    (conf / "task_trainer" / "slip.yaml").write_text("trainer:\n  max_epochs: [1\n")
    with pytest.raises(UserError, match=rf"^task 'slip' from package 'slip-dist': its config {conf / 'task_trainer'}"
                                        r"/slip\.yaml cannot be read: while parsing a flow sequence"):
        entry.require_config_file()


def test_a_task_name_declared_twice_is_a_warning_naming_both_packages(monkeypatch, caplog):
    class Point:
        def __init__(self, name: str, value: str, dist: str) -> None:
            self.name, self.value, self.dist = name, value, type("Dist", (), {"name": dist})()

    points = [Point("forecasting", "other.task:Task", "other-dist"),  # listed first: the built-in still wins
              Point("forecasting", "gru_suite_plugins.forecasting.task:ForecastingTask", "gru-suite")]
    monkeypatch.setattr(registry, "entry_points", lambda group: points)
    registry.installed_tasks.cache_clear()
    try:
        assert registry.installed_tasks()["forecasting"].distribution == "gru-suite"
    finally:
        registry.installed_tasks.cache_clear()
    assert "task 'forecasting' is declared twice: by gru-suite" in caplog.text and "other-dist" in caplog.text


def test_the_built_in_tasks_configs_come_first_on_the_search_path(monkeypatch):
    def entry(distribution: str, folder: str) -> SimpleNamespace:
        return SimpleNamespace(distribution=distribution, config_dir=lambda: folder)

    tasks = {"dupextra": entry("aaa-dup", "/site/aaa_dup/conf"),  # ships its own conf/task/translation.yaml too
             "translation": entry("gru-suite", "/venv/site/gru_suite_plugins/translation/conf"),
             "mine": entry("zzz-mine", "/site/zzz_mine/conf"), "other": entry("aaa-dup", "/site/aaa_dup/conf")}
    monkeypatch.setattr(registry, "installed_tasks", lambda: tasks)
    assert registry.config_search_path() == ["file:///venv/site/gru_suite_plugins/translation/conf",
                                             "file:///site/aaa_dup/conf",
                                             "file:///site/zzz_mine/conf"]


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
