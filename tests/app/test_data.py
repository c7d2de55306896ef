"""Reading a user's data file (scorehamiltonian.app.data) and `train --data` on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorehamiltonian.app.cli import main
from scorehamiltonian.app.data import load_data
from scorehamiltonian.common.errors import DataError
from scorehamiltonian.score.checkpoints import load_score

POINTS = np.array([[0.5, -1.0], [2.0, 3.25], [-4.0, 0.125]])


@pytest.mark.parametrize("fmt", ["npy", "npz", "npz-key", "pt", "pt-dict", "csv", "csv-header"])
def test_every_format_reads_the_same_points(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.split('-')[0]}"
    spec = str(path)
    if fmt == "npy":
        np.save(path, POINTS)
    elif fmt == "npz":
        np.savez(path, anything=POINTS)
    elif fmt == "npz-key":
        np.savez(path, train=POINTS, test=POINTS[:2])
        spec += ":train"
    elif fmt == "pt":
        torch.save(torch.tensor(POINTS), path)
    elif fmt == "pt-dict":
        torch.save({"samples": torch.tensor(POINTS), "note": "plain"}, path)
    else:
        np.savetxt(path, POINTS, delimiter=",", header="x,y" if fmt == "csv-header" else "", comments="")
    x = load_data(spec)
    assert x.dtype == torch.float64 and torch.equal(x, torch.tensor(POINTS))


def test_one_dimensional_arrays_are_points_on_a_line(tmp_path):
    np.save(tmp_path / "line.npy", np.arange(5.0))
    assert load_data(tmp_path / "line.npy").shape == (5, 1)


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    nan = POINTS.copy()
    nan[1, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DataError, match=r"nan.npy.*NaN or Inf in 1 of 3 rows \(first: row 1\)"):
        load_data(tmp_path / "nan.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match=r"cube.npy.*shape \(2, 2, 2\)"):
        load_data(tmp_path / "cube.npy")
    with pytest.raises(DataError, match="dimension 2; the model needs 3"):
        load_data(_saved(tmp_path, POINTS), dim=3)
    np.savez(tmp_path / "two.npz", a=POINTS, b=POINTS)
    with pytest.raises(DataError, match=r"holds 2 arrays \['a', 'b'\]"):
        load_data(tmp_path / "two.npz")
    with pytest.raises(DataError, match="no array 'c'"):
        load_data(f"{tmp_path / 'two.npz'}:c")
    (tmp_path / "words.csv").write_text("a,b\n1,2\nthree,4\n")
    with pytest.raises(DataError, match=r"words.csv.*cannot be read"):
        load_data(tmp_path / "words.csv")
    with pytest.raises(DataError, match="unknown data format '.txt'"):
        load_data(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no data file"):
        load_data(tmp_path / "missing.npy")
    np.save(tmp_path / "one.npy", POINTS[:1])
    with pytest.raises(DataError, match="1 rows; at least 2"):
        load_data(tmp_path / "one.npy")


def _saved(tmp_path, array):
    path = tmp_path / "points.npy"
    np.save(path, array)
    return path


def test_train_on_a_data_file_writes_a_model_and_refuses_bad_data(tmp_path, capsys):
    """`train --data FILE --ensemble 2`: an ensemble checkpoint of the data's dimension; a file with
    a NaN row exits 2 with the file named, and writes nothing."""
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(-2, 0.5, (200, 3)), rng.normal(2, 0.5, (200, 3))])
    np.save(tmp_path / "data.npy", data)
    out = tmp_path / "model.pt"
    assert main(["train", "--data", str(tmp_path / "data.npy"), "--steps", "20", "--ensemble", "2",
                 "--quiet", "--out", str(out)]) == 0
    model = load_score(out)
    assert model.dim == 3 and len(model.members) == 2
    data[5, 2] = np.inf
    np.save(tmp_path / "bad.npy", data)
    assert main(["train", "--data", str(tmp_path / "bad.npy"), "--quiet", "--out", str(tmp_path / "b.pt")]) == 2
    assert "bad.npy" in capsys.readouterr().err and not (tmp_path / "b.pt").exists()
