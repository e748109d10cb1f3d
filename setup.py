"""Minimal setuptools shim so `pip install -e .` works; package metadata lives in settings.ini (nbdev 2)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]
setuptools.setup(
    name=c["lib_name"], version=c["version"], description=c["description"],
    author=c["author"], license=c["license"], python_requires=">=" + c["min_python"],
    packages=setuptools.find_packages(include=[c["lib_path"], c["lib_path"] + ".*"]),
    install_requires=c.get("requirements", "").split(),
    extras_require={"dev": c.get("dev_requirements", "").split()},
    entry_points={"nbdev": [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
    include_package_data=True, zip_safe=False,
)
