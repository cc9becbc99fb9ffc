"""`hydra/sweeper=studies`: one sweep made of several named grids (a union of cartesian products).

Hydra's basic sweeper runs one grid. A study such as seed 000's notebook is several grids that do
not share axes: block sizes x file sizes x readers for plain reads, sync vs mmap, file formats (no
block size at all), small vs large files. As one grid every format would run at every block size.
This sweeper runs each named grid in turn, in one multirun (one parent MLflow run), and labels
every point with `study=<name>` so the summary treats each grid on its own.

    hydra.sweeper.params: {...}            swept in every study (e.g. trial: 1,2,3)
    hydra.sweeper.studies: {name: {...}}   each study's own grid
    hydra.sweeper.only: [name, ...]        run only these studies (default: all, in file order)

A point's overrides are the shared params, then its study's, then the command line's, a later
value of a key replacing an earlier one: `size_mb=16` on the command line shrinks every study.

Hydra instantiates sweepers only from the `hydra_plugins` package, hence this module's place. No
`from __future__ import annotations`: Hydra's plugin scan imports this module without a
sys.modules entry, where dataclasses cannot resolve string annotations.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf


@dataclass
class StudiesSweeperConf:
    _target_: str = "hydra_plugins.iosweep_studies.StudiesSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    studies: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    only: Optional[List[str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="studies", node=StudiesSweeperConf, provider="iosweep")


def selected_studies(studies: dict, only: Optional[list]) -> Dict[str, dict]:
    """The studies to run, in file order; `only` must name studies that exist."""
    studies = dict(studies or {})
    if not studies:
        raise HydraException("hydra.sweeper.studies: no study; give at least one named grid")
    if only:
        unknown = [n for n in only if n not in studies]
        if unknown:
            raise HydraException(f"hydra.sweeper.only={','.join(map(str, unknown))}: no such study; "
                                 f"choose from {', '.join(studies)}")
        studies = {n: studies[n] for n in studies if n in only}
    return studies


def flat(grid, prefix: str = "") -> dict:
    """{data: {rows: 5}} -> {"data.rows": 5}: `hydra.sweeper.studies.formats.data.rows=5` on the
    command line nests the key that the preset wrote as `data.rows`."""
    out = {}
    for k, v in (grid or {}).items():
        if isinstance(v, Mapping):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def study_overrides(shared: Optional[dict], study: Optional[dict], name: str) -> List[str]:
    """One study's sweep as override strings: `study=NAME`, the shared params, then the study's own."""
    merged = {**flat(shared), **flat(study)}
    return [f"study={name}"] + [f"{k}={v}" for k, v in merged.items()]


def jobs(parser: OverridesParser, shared: Optional[dict], studies: Dict[str, dict],
         arguments: List[str]) -> List[List[str]]:
    """Every point's overrides: each study's grid (its product, as the basic sweeper makes it) in turn."""
    out: List[List[str]] = []
    for name, grid in studies.items():
        overrides = parser.parse_overrides(study_overrides(shared, grid, name) + list(arguments))
        out += BasicSweeper.split_arguments(overrides, None)[0]
    return out


class StudiesSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 studies: Optional[Dict[str, Dict[str, Any]]] = None, only: Optional[List[str]] = None) -> None:
        super().__init__(max_batch_size, params)
        self.studies = selected_studies(studies, only)

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        all_jobs = jobs(parser, self.params, self.studies, arguments)
        self.overrides = list(self.split_overrides_to_chunks(all_jobs, self.max_batch_size))

        sweep_dir = Path(self.config.hydra.sweep.dir)  # as the basic sweeper: the sweep's config beside its jobs
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, first_job = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first_job)
            for r in results:
                _ = r.return_value  # raises if the job raised, as the basic sweeper does
            first_job += len(batch)
            returns.append(results)
        return returns
