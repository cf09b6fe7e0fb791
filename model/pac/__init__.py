"""PAC: Perceiver-Actor-Critic offline reinforcement learning, as a Kubernetes-native workflow."""

__version__ = "0.1.0"

IMAGE_NAME = "pac-k8s"  # the project's container image; its tag is always the package version


def image_ref(registry: str = "") -> str:
    """The image reference every KFP component, chart and training job runs: `[registry/]pac-k8s:<version>`."""
    prefix = f"{registry.rstrip('/')}/" if registry else ""
    return f"{prefix}{IMAGE_NAME}:{__version__}"
