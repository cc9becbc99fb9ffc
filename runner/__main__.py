"""python -m runner [overrides] | python -m runner -m key=a,b key2=c,d"""
import sys

import hydra
from omegaconf import DictConfig

from runner import app, console, preflight, schema

schema.register()
app.register_resolvers()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    return app.run_point(cfg)


if __name__ == "__main__":
    sys.argv[1:] = app.quote_null_choices(sys.argv[1:])
    try:
        preflight.check(sys.argv[1:])
    except preflight.UserError as e:
        console.fail(str(e))
    main()
