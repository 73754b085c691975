"""Typed dependencies: what routes may use, taken from the app that serves them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.dataplane import DataPlane
from app.metrics import Metrics
from app.settings import Settings


def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_request_id(request: Request) -> str:
    request_id: str = request.state.request_id
    return request_id


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
