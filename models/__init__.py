"""Backbones by name (`build`, `names`) and frozen teachers from the hub or local files (`load_teacher`).

Every backbone takes RGB [B,3,112,112] in [-1,1] and returns the raw (unnormalised) embedding [B,D].
"""
from . import ir, iresnet, mobilefacenet  # noqa: F401  (importing a module registers its builders)
from .errors import TeacherLoadError
from .registry import UnknownModelError, build, names, register
from .teacher import Teacher, TeacherSpec, load_teacher

__all__ = ["Teacher", "TeacherLoadError", "TeacherSpec", "UnknownModelError", "build", "load_teacher", "names",
           "register"]
