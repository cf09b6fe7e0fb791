"""PAC: Perceiver-Actor-Critic offline reinforcement learning, as a Kubernetes-native workflow."""

__version__ = "0.1.0"
