"""cluster.yaml, checked the way ``ray up`` checks it, without a cloud account.

``ray up`` runs ``prepare_config`` (fill in the provider's defaults, merge the setup commands, the
per-node-type worker counts) and then ``validate_config`` (Ray's JSON schema ``ray-schema.json`` plus
the cross-field checks: ``head_node_type`` among ``available_node_types``, the ``min_workers`` sum
within ``max_workers``). Both come from the installed Ray, so a config that Ray would refuse fails
here. The cluster itself is never launched from this project.
"""

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config



CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
ONPREM_BEGIN = "# --- on-prem variant begins ---"
ONPREM_END = "# --- on-prem variant ends ---"

# vCPUs and GPUs of the instance types used; a new instance type must be added here.
INSTANCE_CAPACITY = {"m5.2xlarge": (8, 0), "g5.xlarge": (4, 1)}
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
LOOPBACK = "127.0.0.1"


def ray_up_check(config: dict) -> dict:
    """What ``ray up`` does with the file before touching any cloud: Ray's own code, unmodified."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def onprem(text) -> dict:
    """The commented-out on-premises variant at the end of cluster.yaml, uncommented."""
    start, end = text.index(ONPREM_BEGIN), text.index(ONPREM_END)
    lines = text[start:end].splitlines()[1:]
    assert lines and all(line == "#" or line.startswith("# ") for line in lines)
    return yaml.safe_load("\n".join(line[2:] for line in lines))


def all_commands(config: dict) -> list[str]:
    commands = [c for key in COMMAND_LISTS for c in config.get(key) or []]
    for node_type in (config.get("available_node_types") or {}).values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node_type.get(key) or []
    return commands


def option(command: str, name: str) -> list[str]:
    """Every value of ``--name VALUE`` / ``--name=VALUE`` in a shell command."""
    words = shlex.split(command.replace(";", " ; "))
    values = []
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            values.append(words[i + 1])
        elif word.startswith(name + "="):
            values.append(word.split("=", 1)[1])
    return values


def mlflow_commands(config: dict) -> list[str]:
    return [c for c in all_commands(config) if "mlflow server" in c]


def head_ray_start(config: dict) -> list[str]:
    return [c for c in config["head_start_ray_commands"] if "ray start" in c and "--head" in c]


# Ray's own validation -------------------------------------------------------------------------------

def test_cluster_yaml_passes_rays_validation(config):
    prepared = ray_up_check(config)
    assert config["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head.cpu", "worker.gpu"}
    assert prepared["head_node_type"] == "head.cpu"


def test_onprem_variant_passes_rays_validation(onprem):
    assert onprem["provider"]["type"] == "local"
    assert onprem["provider"]["head_ip"] and onprem["provider"]["worker_ips"]
    prepared = ray_up_check(onprem)
    # Ray turns a local provider into one node type with a worker per listed machine.
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["max_workers"] == len(onprem["provider"]["worker_ips"])


def test_validation_rejects_an_unknown_top_level_key(config):
    broken = {**copy.deepcopy(config), "max_wokers": 4}
    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        ray_up_check(broken)


def test_validation_rejects_a_head_node_type_that_is_not_defined(config):
    broken = {**copy.deepcopy(config), "head_node_type": "head.missing"}
    with pytest.raises(ValueError, match="head_node_type"):
        ray_up_check(broken)


def test_validation_rejects_fractional_resources(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        ray_up_check(broken)


def test_validation_rejects_more_minimum_workers_than_max_workers(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["worker.gpu"]["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        ray_up_check(broken)


def test_validation_rejects_a_misspelled_node_type_field(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["worker.gpu"]["resource"] = {"GPU": 1}
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        ray_up_check(broken)


# Node types -----------------------------------------------------------------------------------------

def test_node_resources_match_their_instance_types(config):
    for name, node_type in config["available_node_types"].items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCE_CAPACITY, f"{name}: add {instance} to INSTANCE_CAPACITY"
        cpus, gpus = INSTANCE_CAPACITY[instance]
        resources = node_type["resources"]
        assert 1 <= resources.get("CPU", 0) <= cpus, name
        assert resources.get("GPU", 0) == gpus, f"{name}: {instance} has {gpus} GPU(s)"


def test_head_is_a_cpu_node_and_workers_are_gpu_nodes(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert head.get("max_workers", 0) == 0
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"] == {"CPU": 4, "GPU": 1}, name
        assert node_type["node_config"]["InstanceType"] == "g5.xlarge"
        assert node_type["min_workers"] == 0 and node_type["max_workers"] == 4
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values())


# Network exposure -----------------------------------------------------------------------------------

def test_nothing_binds_all_interfaces(text):
    # The whole file, comments and the on-prem variant included.
    assert "0.0.0.0" not in text


@pytest.mark.parametrize("variant", ["aws", "onprem"])
def test_ray_dashboard_binds_loopback(variant, config, onprem):
    cfg = config if variant == "aws" else onprem
    (start,) = head_ray_start(cfg)
    assert option(start, "--dashboard-host") == [LOOPBACK]
    for command in cfg["worker_start_ray_commands"]:
        assert option(command, "--dashboard-host") in ([], [LOOPBACK])


@pytest.mark.parametrize("variant", ["aws", "onprem"])
def test_mlflow_server_binds_loopback_on_the_head(variant, config, onprem):
    # Its only client is the search driver (TrackingCallback), which runs on the head.
    cfg = config if variant == "aws" else onprem
    (command,) = mlflow_commands(cfg)
    assert command in cfg["head_start_ray_commands"]   # on the head only
    assert option(command, "--host") == [LOOPBACK]
    assert option(command, "-h") == []                 # no second, short-form host
    assert option(command, "--port") == ["5000"]
    assert option(command, "--backend-store-uri") == ["sqlite:////home/ubuntu/pann/mlflow.db"]
    assert option(command, "--artifacts-destination") == ["/mnt/shared/mlartifacts"]


# Shared storage, environment, installation ----------------------------------------------------------

def test_setup_mounts_shared_storage_and_installs_the_project(config):
    setup = "\n".join(config["setup_commands"])
    assert "fs-XXXXXXXX.efs." in setup and ":/ /mnt/shared" in setup
    assert "mount -t nfs4" in setup
    assert "export PANN_DATA_DIR=/mnt/shared/data" in setup
    assert "export RAY_AUTH_MODE=token" in setup
    assert "mkdir -p /mnt/shared/data /mnt/shared/pann-runs /mnt/shared/mlartifacts" in setup
    assert config["setup_commands"][-1] == "pip install -e ~/pann"
    assert config["file_mounts"]["~/pann"] == "."
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_installs_the_same_ray_as_here(config, onprem):
    import ray

    for cfg in (config, onprem):
        assert f'pip install "ray[default,tune]=={ray.__version__}"' in cfg["setup_commands"]


def test_placeholders_are_marked(text):
    assert text.count("fs-XXXXXXXX") >= 2        # the command and its explanation
    assert "PLACEHOLDER" in text
