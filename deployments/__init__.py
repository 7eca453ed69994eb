"""The domain app: agents, versions, targets, deployments, instances and governance."""
