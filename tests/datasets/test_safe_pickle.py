import pickle

import numpy as np
import pytest

from memdeploy.datasets.safe_pickle import load_array_pickle
from memdeploy.errors import DatasetError

CALLS = []


def record_call(argument):
    CALLS.append(argument)
    return argument


class CallsOnLoad:
    def __reduce__(self):
        return (record_call, ("called",))


def test_python2_style_batch_loads_arrays(tmp_path, dataset_files):
    images = dataset_files.make_images(2, (3, 32, 32))
    path = dataset_files.write_python_batch(
        tmp_path / "batch", images, [1, 2], "labels"
    )

    batch = load_array_pickle(path)

    assert batch[b"labels"] == [1, 2]
    assert np.array_equal(batch[b"data"], images.reshape(2, -1))


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_python3_array_pickles_load(tmp_path, protocol):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "batch"
    path.write_bytes(
        pickle.dumps({"data": array, "labels": [0, 1, 2]}, protocol=protocol)
    )

    batch = load_array_pickle(path)

    assert np.array_equal(batch["data"], array)


def test_python3_protocol_2_pickle_is_rejected(tmp_path):
    # Python 3 writes bytes at protocol 2 as a call to _codecs.encode, which CIFAR
    # batches written by Python 2 never contain.
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": np.zeros(4, np.uint8)}, protocol=2))

    with pytest.raises(DatasetError, match="references _codecs.encode"):
        load_array_pickle(path)


def test_pickle_function_call_is_rejected(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": CallsOnLoad()}, protocol=4))

    with pytest.raises(
        DatasetError, match=r"references .*record_call, expected only numpy"
    ):
        load_array_pickle(path)
    assert CALLS == []


def test_pickle_naming_builtin_eval_is_rejected(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.")

    with pytest.raises(DatasetError, match="references builtins.eval"):
        load_array_pickle(path)


def test_pickle_with_persistent_id_is_rejected(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02X\x01\x00\x00\x00aQ.")

    with pytest.raises(DatasetError, match="persistent id"):
        load_array_pickle(path)


def test_truncated_pickle_is_rejected(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": np.zeros(10, np.uint8)}, protocol=4)[:-8])

    with pytest.raises(DatasetError, match="cannot unpickle CIFAR batch .*batch"):
        load_array_pickle(path)


def test_non_pickle_file_is_rejected(tmp_path):
    path = tmp_path / "batch"
    path.write_text("not a pickle")

    with pytest.raises(DatasetError, match="cannot unpickle CIFAR batch"):
        load_array_pickle(path)
