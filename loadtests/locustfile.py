"""Locust load for POST /classify: many callers (sticky keys), a mix of short and long texts.

.venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 60s
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, task

TEXTS = [
    "I love my new car, it drives itself!",
    "self-driving cars just seem lazy and a waste of money",
    "Google announced a new autonomous vehicle programme today.",
    "not sure how I feel about robots driving on the motorway",
    "The government said the budget would be published next week, with changes to income tax thresholds "
    "and a new levy on large companies expected to raise two billion pounds.",
    "worst commute ever",
    "ok",
]


class ClassifyUser(FastHttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.key = f"user-{random.randrange(1_000_000)}"

    @task(4)
    def single(self) -> None:
        self.client.post("/classify", json={"text": random.choice(TEXTS)}, headers={"x-kdgate-key": self.key})

    @task(1)
    def batch(self) -> None:
        texts = random.sample(TEXTS, k=random.randint(2, 5))
        self.client.post("/classify", json={"texts": texts}, headers={"x-kdgate-key": self.key})
