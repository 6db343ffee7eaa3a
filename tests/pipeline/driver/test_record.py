"""The run record (pipeline/driver/record.py): round trip, and records written by earlier versions."""

import json

from pipeline.driver.record import FINISHED, RUN_RECORD, RUNNING, RunRecord

IDENTITY = {"params": "p", "data": "d", "code": "c", "torch": "2.5", "torchvision": "0.20"}
MLFLOW_RUN = {"run_id": "abc", "tracking_uri": "sqlite:///m.db", "experiment_id": "1"}


def test_round_trip_in_the_run_folder(tmp_path):
    run_path = str(tmp_path / "ray" / "run-a")
    assert RunRecord.read(run_path) is None  # a run folder without a record: nothing was started
    record = RunRecord(FINISHED, "run-a", IDENTITY, checkpoint_path=f"{run_path}/checkpoint_2", epochs=3,
                       wall_time_s=12.5, mlflow_run=MLFLOW_RUN, model_uri="models:/m/1")
    record.write(run_path)
    assert (tmp_path / "ray" / "run-a" / RUN_RECORD).is_file()
    assert RunRecord.read(run_path) == record and record.finished


def test_reads_the_records_of_earlier_versions(tmp_path):
    """The keys the driver wrote before the record was a dataclass: running (4 keys) and finished."""
    running = {"status": "running", "run_name": "r", "identity": IDENTITY, "mlflow_run": None}
    finished = {"status": "finished", "run_name": "r", "identity": IDENTITY, "checkpoint_path": "/c",
                "epochs": 3, "wall_time_s": 1.5, "mlflow_run": MLFLOW_RUN, "model_uri": None,
                "written_by": "a later version"}  # a key this version does not know is ignored
    for name, data in (("running", running), ("finished", finished)):
        (tmp_path / name).mkdir()
        (tmp_path / name / RUN_RECORD).write_text(json.dumps(data))
    assert RunRecord.read(str(tmp_path / "running")) == RunRecord(RUNNING, "r", IDENTITY)
    assert RunRecord.read(str(tmp_path / "finished")) == RunRecord(FINISHED, "r", IDENTITY, "/c", 3, 1.5, MLFLOW_RUN)
    # ... and writes the same keys back
    RunRecord.read(str(tmp_path / "finished")).write(str(tmp_path / "again"))
    assert json.loads((tmp_path / "again" / RUN_RECORD).read_text()) == {
        k: v for k, v in finished.items() if k != "written_by"}
