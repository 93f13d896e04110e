"""Only a build step pyproject.toml cannot say: the wheel carries the project's params.yaml as
``ferdata/params.yaml`` (``ferdata params`` prints it), so an installed ferdata can start a project
outside a checkout. The file stays one: params.yaml at the root, copied at build time."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, "ferdata", "params.yaml")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile("params.yaml", target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, "ferdata", "params.yaml"))]


setup(cmdclass={"build_py": BuildPy})
