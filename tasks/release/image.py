"""The containerize backend: an OCI image of a release, built by `bentoml containerize`.

The image is tagged `<serving.image_repository or project name>:<bento version>`, the name the
Kubernetes manifests and compose file use. Building needs a Docker daemon; a `docker` client
alone is not enough, so the daemon is asked first and its absence is a clear error.
"""

from __future__ import annotations

import shutil

from config.loader import Project
from tasks.commands import CommandError, bin_path, run
from tasks.release.package import bentoml_env
from tasks.render import kubernetes as k8s

NO_DAEMON_FIX = (
    "Start Docker (e.g. `sudo systemctl start docker`) or point DOCKER_HOST at a running daemon, "
    "or set serving.backend: local to serve without images."
)


def image_for(project: Project, bento_tag: str) -> str:
    """The image name a bento gets; refuses tags without an exact version."""
    try:
        return k8s.image_name(project, k8s.bento_version(bento_tag))
    except ValueError as err:
        raise CommandError(str(err)) from None


def require_docker(project: Project) -> str:
    """The docker client's path, once a daemon has answered `docker info`."""
    exe = shutil.which("docker")
    if exe is None:
        raise CommandError(
            "`docker` is not installed: building release images needs Docker. "
            "Install Docker Engine (https://docs.docker.com/engine/install/). " + NO_DAEMON_FIX
        )
    try:
        run([exe, "info", "--format", "{{.ServerVersion}}"], project.root, hint="", timeout=30)
    except CommandError as err:
        said = next((ln for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        raise CommandError(
            f"no Docker daemon answers (`docker info`: {said.strip()}); "
            f"`bentoml containerize` needs one. {NO_DAEMON_FIX}"
        ) from None
    return exe


def build_image(project: Project, bento_tag: str) -> str:
    """`bentoml containerize` the bento from the project's store; returns the image name."""
    image = image_for(project, bento_tag)
    require_docker(project)
    run(
        [bin_path("bentoml"), "containerize", bento_tag, "-t", image],
        project.root,
        env=bentoml_env(project),
        hint=f"the image {image} was not built; the previous release keeps serving",
        timeout=1800,
    )
    return image


def push_image(project: Project, image: str) -> None:
    """`docker push` to the registry named in serving.image_repository, for a cluster to pull."""
    repository = image.rpartition(":")[0]
    if "/" not in repository:
        raise CommandError(
            f"{image} names no registry, so a cluster cannot pull it: set "
            f"serving.image_repository to e.g. registry.example.com/team/{repository}"
        )
    exe = require_docker(project)
    run(
        [exe, "push", image],
        project.root,
        hint=f"is `docker login` done for {repository.split('/')[0]}?",
        timeout=1800,
    )
