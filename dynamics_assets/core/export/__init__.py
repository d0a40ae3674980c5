"""Curated data out of the project: ``datacomp`` (DataComp subset files of a plan), ``webdataset``
(a plan as webdataset shards)."""
