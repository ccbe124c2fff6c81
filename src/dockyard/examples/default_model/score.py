"""score.py of dockyard's example DEFAULT artifact: iris species from flower measurements.

Laid out like the score.py Oracle ADS generates (load_model with lru_cache, predict(data,
model=load_model())), with the standard library only. The model is model.json beside this file:
a Gaussian naive Bayes fitted on Fisher's iris data set.

    POST /predict  {"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
    -> {"prediction": ["setosa", "virginica"], "probabilities": [{"setosa": 1.0, ...}, ...]}

Rows are [sepal length, sepal width, petal length, petal width] in cm, or objects with the
feature names of model.json. A single row, a bare list of rows, ADS's {"data": ..., "data_type":
...} envelope and a JSON document sent as raw bytes are accepted as well.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from typing import Any

model_name = "model.json"


@lru_cache(maxsize=10)
def load_model(model_file_name: str = model_name) -> dict[str, Any]:
    """The model's parameters, read from the artifact directory (wherever it is mounted)."""
    model_dir = os.path.dirname(os.path.realpath(__file__))
    with open(os.path.join(model_dir, model_file_name), encoding="utf-8") as handle:
        return json.load(handle)  # type: ignore[no-any-return]


def pre_inference(data: Any, features: list[str]) -> list[list[float]]:
    """The request as a list of rows of floats, in model feature order."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ValueError("send the rows as JSON, e.g. {\"data\": [[5.1, 3.5, 1.4, 0.2]]}") from exc
    if isinstance(data, dict):
        if "data" not in data:
            raise ValueError("expected {\"data\": [[sepal_length, sepal_width, petal_length, petal_width], ...]}")
        data = data["data"]
    if isinstance(data, dict):
        data = [data]  # a single row given by feature names
    if isinstance(data, list) and data and not isinstance(data[0], (list, dict)):
        data = [data]  # a single row
    if not isinstance(data, list) or not data:
        raise ValueError("expected a non-empty list of rows, each [sepal_length, sepal_width, petal_length, petal_width]")
    rows = []
    for number, row in enumerate(data):
        if isinstance(row, dict):
            missing = [name for name in features if name not in row]
            if missing:
                raise ValueError(f"row {number} lacks {', '.join(missing)}")
            row = [row[name] for name in features]
        if not isinstance(row, list) or len(row) != len(features):
            raise ValueError(f"row {number} must hold {len(features)} numbers ({', '.join(features)})")
        try:
            rows.append([float(value) for value in row])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"row {number} holds a value that is not a number: {row}") from exc
    return rows


def _log_likelihood(row: list[float], means: list[float], stds: list[float]) -> float:
    total = 0.0
    for value, mean, std in zip(row, means, stds):
        total += -0.5 * math.log(2 * math.pi * std * std) - (value - mean) ** 2 / (2 * std * std)
    return total


def post_inference(model: dict[str, Any], rows: list[list[float]]) -> dict[str, Any]:
    classes = model["classes"]
    predictions, probabilities = [], []
    for row in rows:
        scores = [
            math.log(prior) + _log_likelihood(row, means, stds)
            for prior, means, stds in zip(model["priors"], model["means"], model["stds"])
        ]
        top = max(scores)
        weights = [math.exp(score - top) for score in scores]
        total = sum(weights)
        probabilities.append({name: round(weight / total, 4) for name, weight in zip(classes, weights)})
        predictions.append(classes[scores.index(top)])
    return {"prediction": predictions, "probabilities": probabilities}


def predict(data: Any, model: dict[str, Any] = load_model()) -> dict[str, Any]:
    """Iris species (and each species' probability) for every row of `data`."""
    rows = pre_inference(data, model["features"])
    return post_inference(model, rows)
