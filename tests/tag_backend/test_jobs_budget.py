"""The /predict time budget: what is answered, computed inline, or queued (order always kept)."""
from __future__ import annotations

import pytest
from jobs_fixtures import make_queue, tasks

from tag_backend.jobs.budget import CostEstimate, compute_within_budget, predict_with_budget
from tag_backend.jobs.keys import cache_key


class FakeClock:
    """Each prediction advances time by ``cost`` seconds."""

    def __init__(self, cost: float) -> None:
        self.now, self.cost = 0.0, cost

    def __call__(self) -> float:
        return self.now

    def predict(self, task):
        self.now += self.cost
        return {"result": [{"id": str(task["id"])}], "score": 1.0, "model_version": "v1"}


@pytest.fixture()
def queue(tmp_path):
    from database_tools.store import Store

    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    yield make_queue(store)
    store.close()


def test_compute_stops_before_the_budget_runs_out():
    clock = FakeClock(cost=3.0)
    todo = tasks(10)
    done, rest = compute_within_budget(todo, list(range(10)), 10.0, clock.predict,
                                       CostEstimate(), clock)
    # 90% of 10 s usable: 3 tasks of 3 s fit (the 4th would end at 12 s).
    assert sorted(done) == [0, 1, 2] and rest == list(range(3, 10))
    assert clock.now <= 10.0


def test_a_known_cost_larger_than_the_budget_computes_nothing():
    clock = FakeClock(cost=50.0)
    done, rest = compute_within_budget(tasks(3), [0, 1, 2], 30.0, clock.predict,
                                       CostEstimate(initial=50.0), clock)
    assert done == {} and rest == [0, 1, 2]


def test_estimate_is_a_running_average():
    est = CostEstimate(alpha=0.5)
    assert est.value is None
    est.update(4.0)
    est.update(2.0)
    assert est.value == pytest.approx(3.0)
    with pytest.raises(ValueError):
        CostEstimate(alpha=0)


def _predict(queue, todo, cost, budget, estimate=None, ready=True):
    clock = FakeClock(cost)
    return predict_with_budget(queue, todo, label_config="<View/>", model_version="v1",
                               budget=budget, predict_one=clock.predict, project_id=3,
                               push=True, engine_ready=ready,
                               estimate=estimate or CostEstimate(), clock=clock)


def test_rest_is_queued_as_a_job_with_empty_items_in_order(queue):
    todo = tasks(6)
    out = _predict(queue, todo, cost=4.0, budget=10.0)
    assert len(out.items) == 6
    assert out.computed == [0, 1] and out.queued == [2, 3, 4, 5]
    assert [it["result"][0]["id"] for it in out.items[:2]] == ["1", "2"]
    assert out.items[2:] == [[], [], [], []]  # LS stores nothing for an empty prediction list
    job = queue.get_job(out.job_id)
    assert (job.kind, job.project_id, job.model_version) == ("predict", 3, "v1")
    assert queue.progress(out.job_id).total == 4
    # The same selection again: queued tasks are not queued twice (only the two computed
    # inline, whose answers went to Label Studio and were not stored, form a new job).
    again = _predict(queue, todo, cost=4.0, budget=0.0, estimate=CostEstimate(initial=4.0))
    assert again.queued == [0, 1, 2, 3, 4, 5]
    assert queue.progress(out.job_id).total == 4
    assert queue.progress(again.job_id).total == 2
    third = _predict(queue, todo, cost=4.0, budget=0.0, estimate=CostEstimate(initial=4.0))
    assert third.job_id is None and third.queued == [0, 1, 2, 3, 4, 5]


def test_finished_background_work_is_answered_from_the_store(queue):
    todo = tasks(3)
    out = _predict(queue, todo, cost=1.0, budget=0.0, estimate=CostEstimate(initial=1.0))
    assert out.queued == [0, 1, 2]
    for claim in queue.claim("w", 10):
        item = {"result": [{"id": f"bg{claim.ls_task_id}"}], "score": 0.3, "model_version": "v1"}
        queue.complete(claim, "w", item, cache_key("v1", "<View/>", claim.task))
    answered = _predict(queue, todo, cost=1.0, budget=0.0, estimate=CostEstimate(initial=1.0))
    assert answered.cached == [0, 1, 2] and answered.queued == []
    assert [it["result"][0]["id"] for it in answered.items] == ["bg1", "bg2", "bg3"]
    # Another model version does not see these results.
    other = predict_with_budget(queue, todo, label_config="<View/>", model_version="v2",
                                budget=0.0, predict_one=None, project_id=3, push=True,
                                engine_ready=False)
    assert other.cached == [] and other.queued == [0, 1, 2]
    # Nor do the same version's predictions made with other output-shaping settings.
    reshaped = predict_with_budget(queue, todo, label_config="<View/>", model_version="v1",
                                   budget=0.0, predict_one=None, project_id=3, push=True,
                                   engine_ready=False, output="other-settings")
    assert reshaped.cached == [] and reshaped.queued == [0, 1, 2]


def test_nothing_is_computed_inline_before_the_models_are_loaded(queue):
    out = _predict(queue, tasks(2), cost=1.0, budget=100.0, ready=False)
    assert out.computed == [] and out.queued == [0, 1]


def test_tasks_without_an_id_get_an_empty_result_and_are_not_queued(queue):
    todo = [{"data": {"image": "x"}}, "garbage", *tasks(1)]
    out = _predict(queue, todo, cost=1.0, budget=0.0, estimate=CostEstimate(initial=1.0))
    assert out.items[0] == {"result": [], "score": 0.0, "model_version": "v1"}
    assert out.items[1] == {"result": [], "score": 0.0, "model_version": "v1"}
    assert out.items[2] == [] and out.queued == [2]
