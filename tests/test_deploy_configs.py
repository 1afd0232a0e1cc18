"""Deployment files (cluster/, jobs/) are well formed and agree with the package: static checks, no Ray, no network."""

import ast
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from raydistill.config import list_recipes

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
JOBS = ROOT / "jobs"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
KUBERAY = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]


def load(path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    return docs[0]


def ray_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    pins = re.findall(r'"ray(?:\[[^\]]*\])?==([^"]+)"', text)
    assert len(pins) == 1, pins
    return pins[0]


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_templates(spec: dict):
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_every_yaml_parses():
    files = sorted(CLUSTER.glob("*.yaml")) + sorted(JOBS.glob("*.yaml"))
    assert {p.name for p in files} >= set(LAUNCHERS + KUBERAY) | {"runtime_env.yaml", "cifar10-taef2.yaml"}
    for path in files:
        assert isinstance(load(path), dict), path.name


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config(name):
    config = load(CLUSTER / name)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in config, f"{name}: missing {key}"
    assert config["provider"]["type"] == name.removesuffix(".yaml")
    assert config["idle_timeout_minutes"] > 0
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--head" in head_start and "--num-cpus=0" in head_start
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers
    for type_name, node in workers.items():
        assert node["min_workers"] == 0, type_name
        assert node["max_workers"] <= config["max_workers"], type_name
        assert any("--shm-size=" in o for o in node["docker"]["worker_run_options"]), type_name
        node_config = node["node_config"]
        if name == "aws.yaml":
            assert node_config["InstanceMarketOptions"]["MarketType"] == "spot", type_name
        else:
            assert node_config["scheduling"]["provisioningModel"] == "SPOT", type_name
    gpu_types = [k for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1]
    assert gpu_types, f"{name}: no GPU worker type"
    if name == "gcp.yaml":
        for type_name in gpu_types:
            node_config = workers[type_name]["node_config"]
            assert node_config["guestAccelerators"][0]["acceleratorCount"] >= 1
            assert node_config["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert any("--shm-size=" in o for o in config["docker"]["head_run_options"])
    assert re.fullmatch(r"\S+/raydistill:\S+", config["docker"]["image"])


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_matches_rays_schema(name):
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates the package without importing (starting) anything
    if spec is None or spec.origin is None:
        pytest.skip("ray is not installed")
    schema = json.loads((Path(spec.origin).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load(CLUSTER / name), schema)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_keeps_token_auth_on(name):
    config = load(CLUSTER / name)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token ray start" in c for c in start), key
    # One token for the whole cluster and the client, shipped by file_mounts (never generated per node).
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert not re.search(r"(^|[;&|]\s*)ray get-auth-token", command), command


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_cluster_spec(name):
    doc = load(CLUSTER / name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == {"kuberay-raycluster.yaml": "RayCluster", "kuberay-rayjob.yaml": "RayJob"}[name]
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == ray_version() == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    head_params = spec["headGroupSpec"]["rayStartParams"]
    assert head_params["num-cpus"] == "0" and head_params["dashboard-host"] == "0.0.0.0"
    assert head_params["metrics-export-port"].isdigit()
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] == 0 for g in groups)
    assert all(g["maxReplicas"] >= 1 and g.get("replicas", 0) == 0 for g in groups)
    gpu_groups = [g["groupName"] for g in groups
                  if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
                         for c in g["template"]["spec"]["containers"])]
    assert len(gpu_groups) == 1, gpu_groups
    for group, pod in pod_templates(spec):
        shm = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
        assert shm, group
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/dev/shm") in shm, (group, container["name"])
            assert re.fullmatch(r"\S+/raydistill:\S+", container["image"])


def test_rayjob_runs_raydistill_with_the_jobs_runtime_env():
    from raydistill.config import load_config, parse_override

    job = load(CLUSTER / "kuberay-rayjob.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(job["runtimeEnvYAML"]) == yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["raydistill", "run"]
    flags = {argv[i]: argv[i + 1] for i in range(2, len(argv) - 1) if argv[i].startswith("--") and argv[i] != "--set"}
    assert flags["--config"].startswith("/app/jobs/")  # the image copies jobs/ to /app/jobs
    assert re.match(r"(s3|gs)://", flags["--out"]), "a run on a cluster needs a durable --out every node reaches"
    sets = [parse_override(argv[i + 1]) for i in range(2, len(argv) - 1) if argv[i] == "--set"]
    config = load_config(JOBS / Path(flags["--config"]).name, sets)
    assert config.encode.gpus_per_actor == 1.0 and config.train.use_gpu is True


def test_rayjob_and_raycluster_describe_the_same_cluster():
    cluster = load(CLUSTER / "kuberay-raycluster.yaml")["spec"]
    assert load(CLUSTER / "kuberay-rayjob.yaml")["spec"]["rayClusterSpec"] == cluster


def test_one_ray_version_everywhere():
    version = ray_version()
    files = [ROOT / "pyproject.toml"] + sorted(p for p in CLUSTER.rglob("*") if p.is_file())
    base_images, pins, own_images = [], [], []
    for path in files:
        text = path.read_text()
        base_images += [(path.name, t) for t in re.findall(r"rayproject/ray:([\w.-]+)", text)]
        pins += [(path.name, v) for v in re.findall(r"\bray(?:\[[\w,\s-]*\])?==([\w.]+)", text)]
        own_images += [(path.name, t) for t in re.findall(r"raydistill:([\w.-]+)", text)]
    assert base_images and pins and own_images
    assert all(t.split("-")[0] == version for _, t in base_images), base_images
    assert all(v == version for _, v in pins), pins
    assert all(t.split("-")[0] == version for _, t in own_images), own_images
    assert "FROM rayproject/ray:2.60.0-py311-gpu" in (CLUSTER / "Dockerfile").read_text().splitlines()


def test_no_file_turns_token_auth_off():
    paths = [p for p in sorted(CLUSTER.rglob("*")) + sorted(JOBS.rglob("*")) if p.is_file()]
    for path in paths:
        text = path.read_text()
        assert not re.search(r"RAY_AUTH_MODE\W{0,3}(=|:)\W{0,3}disabled", text, re.I), path.name
        if path.suffix in (".yaml", ".yml"):
            for node in walk(load(path)):
                if isinstance(node, dict):
                    if node.get("name") == "RAY_AUTH_MODE":
                        assert node.get("value") == "token", path.name
                    assert str(node.get("RAY_AUTH_MODE", "token")).lower() == "token", path.name
                    if isinstance(node.get("authOptions"), dict):
                        assert node["authOptions"].get("mode") == "token", path.name
    for name in LAUNCHERS:
        assert "RAY_AUTH_MODE=token" in (CLUSTER / name).read_text()


def metric_names() -> set[str]:
    """Prometheus names of raydistill's metrics, read from raydistill/metrics.py without importing Ray."""
    tree = ast.parse((ROOT / "raydistill" / "metrics.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("COUNTERS", "GAUGES"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    counters = {f"ray_{name}_total" for name in found["COUNTERS"]}
    gauges = {f"ray_{name}" for name in found["GAUGES"]}
    assert len(counters) == 9 and len(gauges) == 5
    return counters | gauges


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def test_grafana_dashboard_uses_only_real_metrics():
    names = metric_names()
    dashboard = json.loads((CLUSTER / "grafana" / "raydistill-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["run"]["type"] == "query" and "run)" in variables["run"]["query"]["query"]
    used = set()
    graphs = [p for p in panels(dashboard["panels"]) if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            referenced = set(re.findall(r"\bray_\w+", expr))
            assert referenced and referenced <= names, (panel["title"], referenced - names)
            assert 'run=~"$run"' in expr, panel["title"]
            for name in referenced:  # counters are only ever read through a window function
                if name.endswith("_total"):
                    assert re.search(rf"(rate|increase|max_over_time)\({name}\{{", expr), expr
            used |= referenced
    assert used == names, names - used
    assert len({p["id"] for p in panels(dashboard["panels"])}) == len(list(panels(dashboard["panels"])))


@pytest.mark.parametrize("path", sorted(p for p in JOBS.glob("*.yaml") if p.name != "runtime_env.yaml"),
                         ids=lambda p: p.name)
def test_every_job_config_loads_and_validates(path):
    from raydistill.config import load_config
    from raydistill.pipeline import validate

    config = load_config(path)
    validate(config)
    if path.name.startswith(("imagenet-", "imagenette-", "imagewoof-")):
        # RDED, D3HR and DDOQ take soft labels from torchvision's ResNet-18, not timm's default (BCE-trained) tag.
        assert config.train.teacher == "resnet18.tv_in1k"
        assert config.prior.spec.startswith("dit:") and config.data.image_size == 224


def test_d3hrs_cifar10_recipe_generates_as_its_imagenet_one_and_trains_as_its_release():
    from raydistill.config import load_config

    cifar, imagenet = (load_config(overrides=[{"recipe": name}]) for name in ("d3hr-cifar10", "d3hr-imagenet"))
    assert (cifar.encode, cifar.quantize, cifar.synthesize) == (imagenet.encode, imagenet.quantize, imagenet.synthesize)
    assert cifar.prior.resolution == 256 and cifar.prior.spec.startswith("dit:")
    train = cifar.train
    assert (train.students, train.epochs, train.batch_size, train.lr, train.lr_schedule, train.repeats) == (
        ("resnet18-modified",), 400, 50, 1e-3, "half_cosine", 5)


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_validates_and_names_its_paper_numbers(name):
    from raydistill.config import RECIPES, load_config
    from raydistill.pipeline import validate

    config = validate(load_config(overrides=[{"recipe": name}]))
    # CIFAR-10's teacher is RDED's CIFAR ResNet-18, trained on 32 px images; ImageNet's is torchvision's ResNet-18.
    teacher, image_size = ("resnet18-modified:", 32) if name.endswith("cifar10") else ("resnet18.tv_in1k", 224)
    assert config.recipe == name and config.train.teacher.startswith(teacher) and config.data.image_size == image_size
    header = " ".join(line for line in (RECIPES / f"{name}.yaml").read_text().splitlines() if line.startswith("#"))
    assert re.search(r"top-1 [\d.]+ / [\d.]+", header) or "not in our ANCHORS.md" in header, header
