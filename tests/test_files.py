import pytest

from pann.files import atomic_write, read_yaml, write_bytes_atomic


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    write_bytes_atomic(path, b"first")
    write_bytes_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as temporary:
            assert temporary.parent == path.parent  # same folder: os.replace stays on one file system
            temporary.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_read_yaml_returns_the_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet20\nmilestones: [1, 2]\n")
    assert read_yaml(path) == {"model": "resnet20", "milestones": [1, 2]}
    path.write_text("")
    assert read_yaml(path) == {}


@pytest.mark.parametrize("text,error,message", [
    ("- 1\n- 2\n", ValueError, "must hold a mapping of fields, got list"),
    ("model: [resnet20\n", ValueError, "is not valid YAML"),
    (None, FileNotFoundError, "config file not found"),
])
def test_read_yaml_errors_name_the_file_in_one_line(tmp_path, text, error, message):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(error, match=message) as info:
        read_yaml(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
