"""The workbench layer: the run folder's one owner, a command that starts without torch, families from plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from feds_lab.run_folder import KEY_FIGURES, NOTEBOOKS, RunLayout, anchor_results_name


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_run_folder_spells_every_path_once(tmp_path):
    layout = RunLayout(tmp_path / "run")
    assert layout.pipeline_file == tmp_path / "run" / "pipeline.yaml"
    assert layout.state_file.name == "state.json"
    assert layout.notebook(NOTEBOOKS[0]) == tmp_path / "run" / "notebooks" / "01_teacher_training.ipynb"
    assert layout.teacher(0.0067) == tmp_path / "run" / "teacher" / "l0.0067"
    assert layout.student_model("feds", 0.013) == tmp_path / "run" / "student" / "feds" / "l0.013" / "model.safetensors"
    assert layout.bd_rate == tmp_path / "run" / "results" / "bd_rate.csv"
    assert layout.params_speed.name == "params_speed.csv"
    assert layout.student_results("scratch").name == "student_scratch.json"
    assert layout.anchor_results("JPEG2000") == tmp_path / "run" / "results" / "anchors" / "jpeg2000.json"
    assert anchor_results_name("WebP") == "webp.json"
    assert layout.report_index == tmp_path / "run" / "report" / "index.html"
    assert not (tmp_path / "run").exists()  # paths only
    assert layout.figure(KEY_FIGURES[0]).parent.is_dir()
    from feds_lab import run_folder
    from feds_lab.training import state

    assert run_folder.MODEL_FILE is state.MODEL_FILE and run_folder.METRICS_FILE == state.METRICS_FILE


def test_no_torch_for_help_nor_for_the_light_modules_and_no_cycle():
    out = _python("""
        import sys
        import feds_lab.report, feds_lab.run_folder, feds_lab.presets
        assert "feds_lab.pipeline" not in sys.modules, "report imports pipeline again"
        import feds_lab.pipeline
        from feds_lab.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print("torch" in sys.modules, "compressai" in sys.modules)
    """)
    assert out.splitlines()[-1] == "False False"


def test_help_lines_of_the_mounted_commands_are_their_parsers_own():
    from feds_lab.cli import MOUNTED, build_parser

    parser = build_parser()  # everything mounted
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, (_, _, help_) in MOUNTED.items():
        assert helps[name] == help_, name


def test_only_the_named_command_is_mounted_for_real():
    from feds_lab.cli import build_parser

    args = build_parser(["bdrate", "a.json", "b.json"]).parse_args(["bdrate", "a.json", "b.json"])
    assert callable(args.func)


_PLUGIN = '''
from compressai.models import MeanScaleHyperprior
from feds_lab.models.wrappers import GOOGLE_GA_TAPS, GOOGLE_GS_TAPS, register_compressai_family

register_compressai_family("{name}", MeanScaleHyperprior, GOOGLE_GA_TAPS, GOOGLE_GS_TAPS,
                           presets={{"tiny": {{"teacher": {{"N": 16, "M": 24}}, "student": {{"N": 8, "M": 16}}}}}})
'''


def test_families_of_other_packages_through_the_entry_point_group(tmp_path):
    (tmp_path / "eplab_codecs.py").write_text(_PLUGIN.format(name="eplab:msh"))
    dist = tmp_path / "eplab-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: eplab\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[feds_lab.families]\neplab = eplab_codecs\n")
    out = _python(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from feds_lab.cli import main
        main(["families"])
        from feds_lab.models import build_model
        print(build_model("student", "tiny", family="eplab:msh").feature_channels()["y"])
    """)
    assert "eplab:msh  (presets: tiny)" in out and out.splitlines()[-1] == "16"


def test_plugin_flag_makes_a_users_family_known_to_the_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "flaglab_codecs.py").write_text(_PLUGIN.format(name="flaglab:msh"))
    monkeypatch.syspath_prepend(str(tmp_path))
    from feds_lab import presets
    from feds_lab.cli import main
    from feds_lab.models import registry

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(presets, "MODEL_PRESETS", dict(presets.MODEL_PRESETS))
    assert main(["--plugin", "flaglab_codecs", "families"]) == 0
    assert "flaglab:msh  (presets: tiny)" in capsys.readouterr().out
    assert main(["--plugin", "no_such_plugin_module", "families"]) == 1
    assert "plugin 'no_such_plugin_module' cannot be imported" in capsys.readouterr().err
