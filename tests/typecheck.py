"""The runtime checker of every annotation in ``threestudio`` during the tests (conftest installs it with
jaxtyping's import hook): beartype, with PEP 484's numeric tower (an int is a valid float), checking
jaxtyping shapes (``Float[Tensor, "B H W 3"]``; one size per named dimension within a call)."""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
