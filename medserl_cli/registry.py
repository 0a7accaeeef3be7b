"""Service names -> classes, imported lazily so one service never loads another's dependencies."""

from __future__ import annotations

import importlib

from services.common.runtime import Service

SERVICES: dict[str, str] = {
    "generator": "services.generator.service:GeneratorService",
    "verifier": "services.verifier.service:VerifierService",
    "injector": "services.injector.service:InjectorService",
    "assessor": "services.assessor.service:AssessorService",
    "trainer": "trainer.service:TrainerService",
}


def load_service_class(name: str) -> type[Service]:
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")
    module_name, class_name = SERVICES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
