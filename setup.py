"""Maps the bundle's top-level folders below the `blipguard` import namespace.

`app_patch/` installs as `blipguard.app_patch`. `operator/` (the Kubernetes operator) must
never become an importable top-level `operator`: the standard library owns that name.
"""

from setuptools import find_packages, setup

# operator/ holds no __init__.py: run from the repo root, it would shadow the stdlib module.
FOLDERS = {"blipguard.app_patch": "app_patch", "blipguard.operator": "operator/blipguard_operator"}

packages = find_packages("src")
package_dir = {"": "src"}
for name, folder in FOLDERS.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
