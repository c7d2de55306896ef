"""The command line: the README's main command, errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scorehamiltonian.app.cli import main


def test_audit_of_the_builtin_example(capsys):
    assert main(["audit", "--example", "bimodal", "--samples", "300"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().endswith("exact")]
    assert len(rows) == 4, out
    assert "OU(T=10.0)" in out


def test_audit_in_2d_under_another_process(capsys):
    assert main(["audit", "--example", "four_mode_2d", "--process", "edm", "--t", "0.5", "2", "--samples", "200"]) == 0
    assert "EDM(sigma_max=80.0)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["audit", "--t", "20"], "outside the valid time range"),
        (["audit", "--samples", "1"], "--samples must be at least 2"),
        (["audit", "--model", "/nonexistent/model.pt"], "/nonexistent/model.pt"),
        (["energy", "--x", "0", "--atol", "-1"], "atol and rtol must be finite"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == "", "bad input must be refused before any work is printed"


def test_unknown_example_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--example", "pentamodal"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "scorehamiltonian", "examples"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "four_mode_2d" in done.stdout


def test_train_then_audit_the_model_against_its_reference(tmp_path, capsys):
    ckpt = tmp_path / "bimodal.pt"
    assert main(["train", "--example", "bimodal", "--samples", "4000", "--out", str(ckpt)]) == 0
    assert ckpt.is_file()
    assert main(["audit", "--model", str(ckpt), "--reference", "bimodal", "--t", "0.3", "1", "--samples", "500"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "+-" in line and "autograd" in line]
    assert len(rows) == 2, out
    for row in rows:  # relative score error of the trained model, below the 10% of the DSM target
        assert float(row.split()[-3]) < 0.1, row


def test_gap_of_the_builtin_example(capsys):
    assert main(["gap", "--example", "bimodal", "--t", "0.3", "1", "--rtol", "1e-5"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[0] in ("0.3", "1")]
    assert len(rows) == 2 and all(row[3] == "True" for row in rows), out
    assert all(float(row[2]) <= 1e-5 * float(row[1]) for row in rows)


def test_gap_refuses_a_bad_tolerance(capsys):
    assert main(["gap", "--rtol", "2"]) == 2
    assert "--rtol must lie in (0, 1)" in capsys.readouterr().err


def test_energy_of_the_builtin_example_is_refined_to_its_request(capsys):
    """By default each point's grid is refined until its bar meets --atol (the point at 0.4 sits
    on the barrier, where a fixed 64-step EDM grid is 0.2 nats off); --steps runs one fixed grid."""
    assert main(["energy", "--x", "-1", "0.4", "2", "--atol", "1e-4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[-5:] for line in out.splitlines() if line.lstrip().startswith("[")]
    assert len(rows) == 3 and "refined to atol = 0.0001" in out, out
    for value, error, steps, reached, exact in rows:
        assert reached == "True" and float(error) <= 1e-4 and abs(float(value) - float(exact)) <= float(error)
    assert main(["energy", "--x", "0.4", "--steps", "64"]) == 0
    value, error, steps, reached, exact = next(line.split()[-5:] for line in capsys.readouterr().out.splitlines()
                                               if line.lstrip().startswith("["))
    assert steps == "64" and abs(float(value) - float(exact)) <= float(error)
