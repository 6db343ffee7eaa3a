"""The tests' console check (``console_noise``): what it reports and the exact Ray block it skips."""

OVERLOADED_BLOCK = [
    "(TrainController pid=7) Failed to send resource request for train-3006995c. If this only happens "
    "transiently during network partition or CPU being overloaded, it's safe to ignore this error.",
    "(TrainController pid=7) Traceback (most recent call last):",
    "(TrainController pid=7)   File \"ray/_private/worker.py\", line 3009, in get",
    "(TrainController pid=7) ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
]


def test_the_overloaded_coordinator_block_is_skipped_and_other_noise_kept(console_noise):
    console = "\n".join(["[train] epoch 1/1 done", *OVERLOADED_BLOCK,
                         "(TrainController pid=7) Traceback (most recent call last):", "WARNING something else"])
    assert console_noise(console) == ["(TrainController pid=7) Traceback (most recent call last):",
                                      "WARNING something else"]


def test_a_traceback_without_the_ray_message_is_reported(console_noise):
    assert console_noise("\n".join(OVERLOADED_BLOCK[1:])) == OVERLOADED_BLOCK[1:2] + OVERLOADED_BLOCK[3:]
