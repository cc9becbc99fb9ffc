"""iosweep [overrides] | iosweep -m key=a,b key2=c,d  (or python -m runner ...)"""
import signal
import sys

import hydra
from omegaconf import DictConfig

from runner import app, console, preflight, schema, secrets, tracking
from workloads import Interrupted

schema.register()
app.register_resolvers()


@hydra.main(config_path=str(schema.CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    return app.run_point(cfg)


def cli() -> None:
    """`python -m runner` and the `iosweep` console script."""
    secrets.remember_overrides(sys.argv[1:])  # before anything (Hydra's errors included) can print them
    secrets.guard_terminal()
    sys.argv[1:] = app.quote_null_choices(sys.argv[1:])
    try:
        preflight.check(sys.argv[1:])
    except preflight.UserError as e:
        console.fail(str(e), e.code)
    app.stop_on_signals()
    try:
        main()
    except Interrupted as e:
        tracking.INTERRUPTED.append(e.signum)  # a sweep's parent closes as KILLED (at exit)
        name = signal.Signals(e.signum).name
        print(f"iosweep: stopped by {name}: what it wrote removed (scratch files, objects), the run recorded as KILLED",
              file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    cli()
