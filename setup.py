"""Package discovery: every package under editwrap/, with the top-level evals/ and integrations/
folders mapped into it as editwrap.evals and editwrap.integrations (the rest is in pyproject.toml)."""
from setuptools import find_packages, setup

MAPPED = {"editwrap.evals": "evals", "editwrap.integrations": "integrations"}
packages = find_packages(include=["editwrap", "editwrap.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=MAPPED)
