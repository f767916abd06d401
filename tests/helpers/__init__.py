"""What the tests share, by area (no test module imports another):

* :mod:`tests.helpers.library`: tiny states and batches, paths, finite differences (no ``experiments`` import:
  the library's own tests use only this, :mod:`~tests.helpers.evaluation`, :mod:`~tests.helpers.photos` and
  :mod:`~tests.helpers.caffe`);
* :mod:`tests.helpers.evaluation`: brute-force references of the evaluation, its data, engine settings;
* :mod:`tests.helpers.photos`: photographs and official-layout trees;
* :mod:`tests.helpers.caffe`: ``.caffemodel`` files written by protobuf;
* :mod:`tests.helpers.runs`: the experiments' fast configs and checkpoints (imports ``experiments``).
"""
