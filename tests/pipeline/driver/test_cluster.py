"""pipeline.driver.cluster: Ray's autoscaling coordinator started before a Train run."""

from __future__ import annotations

import sys

from pipeline.driver.cluster import ready_autoscaling_coordinator

# Where Ray's coordinator lives, as Ray Data creates it and Ray Train's controller looks it up.
COORDINATOR = {"name": "AutoscalingCoordinator", "namespace": "AutoscalingCoordinator"}


def test_the_coordinator_is_running_before_the_train_controller_asks(local_ray):
    import ray
    from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
        AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
    )

    assert ready_autoscaling_coordinator()
    actor = ray.get_actor(**COORDINATOR)
    # the controller's first request now answers well inside its 5 s limit (the actor exists)
    ray.get(actor.__ray_ready__.remote(), timeout=AUTOSCALING_REQUESTS_GET_TIMEOUT_S)
    assert ready_autoscaling_coordinator(), "a second call finds the same actor"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert names.count(COORDINATOR["name"]) == 1


def test_a_ray_without_the_coordinator_is_left_to_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator", None)
    assert not ready_autoscaling_coordinator()
