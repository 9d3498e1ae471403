"""The containerize backend with a real bento: its Dockerfile, the no-daemon error, the image."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from config.loader import load_project
from tasks.commands import CommandError, bin_path
from tasks.release.image import build_image, image_for, push_image
from tasks.release.package import bentoml_env, bentoml_home, build_bento, register_model
from tests.contracts.test_deployments import config_copy
from tests.support import free_port, sh, tool_env


def _daemon_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    return done.returncode == 0


DAEMON = _daemon_answers()


@pytest.fixture(scope="module")
def bento(trained_project):
    project = load_project(trained_project / "config/driftloop.yaml")
    return project, build_bento(project, register_model(project))


@pytest.mark.integration
def test_the_bento_carries_the_dockerfile_containerize_uses(bento):
    project, built = bento
    name, version = built.tag.split(":")
    dockerfile = bentoml_home(project) / "bentos" / name / version / "env/docker/Dockerfile"
    assert dockerfile.is_file()
    assert "bentoml" in dockerfile.read_text().lower()


@pytest.mark.integration
@pytest.mark.skipif(DAEMON, reason="a Docker daemon answers on this machine")
def test_without_a_daemon_the_build_names_the_problem_and_the_fix(bento):
    project, built = bento
    with pytest.raises(CommandError) as failed:
        build_image(project, built.tag)
    message = str(failed.value)
    assert "no Docker daemon answers" in message
    assert "`bentoml containerize` needs one" in message
    assert "DOCKER_HOST" in message and "serving.backend: local" in message
    # and bentoml itself agrees: its containerize cannot work here either
    direct = subprocess.run(
        [bin_path("bentoml"), "containerize", built.tag, "-t", image_for(project, built.tag)],
        cwd=project.root,
        env={**tool_env(), **bentoml_env(project)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert direct.returncode != 0
    assert "docker" in (direct.stdout + direct.stderr).lower()


@pytest.mark.integration
@pytest.mark.skipif(not DAEMON, reason="no Docker daemon on this machine")
def test_with_a_daemon_the_image_serves_the_bento(bento):
    project, built = bento
    image = build_image(project, built.tag)
    assert image == f"{project.config.project.name}:{built.tag.split(':')[1]}"
    port = free_port()
    container = sh(["docker", "run", "-d", "-p", f"127.0.0.1:{port}:3000", image], project.root)
    cid = container.stdout.strip()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the container never became ready on /readyz")
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def test_a_tag_without_a_version_gets_no_image(tmp_path):
    project = config_copy(tmp_path, lambda raw: None)
    with pytest.raises(CommandError, match="never :latest"):
        image_for(project, "bikeshare:latest")


def test_pushing_needs_a_registry_in_the_image_name(tmp_path):
    project = config_copy(tmp_path, lambda raw: None)
    with pytest.raises(CommandError, match="names no registry"):
        push_image(project, image_for(project, "bikeshare:v1"))
