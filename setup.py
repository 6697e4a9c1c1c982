"""Builds weightcast._native with CMake for `pip install .` (pyproject.toml holds the metadata)."""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        root = os.path.dirname(os.path.abspath(__file__))
        build = os.environ.get("WEIGHTCAST_BUILD_DIR")
        if build:
            build = os.path.abspath(build)
        else:
            build = os.path.abspath(os.path.join(self.build_temp, "cmake"))
            subprocess.check_call(["cmake", "-S", root, "-B", build, "-G", "Ninja",
                                   "-DCMAKE_BUILD_TYPE=Release",
                                   f"-DPython3_EXECUTABLE={sys.executable}"])
        subprocess.check_call(["cmake", "--build", build, "--target", "weightcast_py"])
        built = glob.glob(os.path.join(build, "python", "weightcast", "_native*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one _native module in {build}/python/weightcast, found {built}")
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(built[0], out)


# setuptools' own files go under build/setuptools, not next to the sources.
os.makedirs("build/setuptools", exist_ok=True)
setup(ext_modules=[Extension("weightcast._native", sources=[])], cmdclass={"build_ext": CMakeBuild},
      options={"build": {"build_base": "build/setuptools"}, "egg_info": {"egg_base": "build/setuptools"},
               "bdist_wheel": {"bdist_dir": "build/setuptools/bdist"}})
