# Two images from one file:
#
#   service   (the last stage, what a plain `docker build` makes): the
#             invoice-sm console script and every service command (process,
#             deliver, run, publish, replay, ...). Only domain/, adapters/,
#             consumers/ and schemas/ are in it: the developer tools are not.
#   devtools  the same plus devtools/, run as `python -m devtools`; compose.yaml
#             runs the WeChat simulator from it (`wechat-sim`).
#
#   docker build -t invoice-sm:local .
#   docker run --rm invoice-sm:local --help
#   docker build --target devtools -t invoice-sm-devtools:local .
#
# tests/unit/test_compose.py checks the stages and their COPY lists.

# The Rust toolchain that builds the native step (native/); only its files
# are copied into the build stage, never into an image.
FROM rust:1.95-slim AS rust-toolchain

# Build stage: install the locked dependencies, then the project, into a
# venv, so the final images carry neither the sources nor pip's leftovers.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Every package at the version and with the hashes in the lock file (made by
# `./dev lock`), transitive ones included, so two builds get the same bytes.
# It holds the build backend too (setuptools, wheel): the project is then
# built without build isolation, which would fetch an unpinned setuptools.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
# Only what `pip install .` reads (the packages in pyproject.toml's
# [tool.setuptools.packages.find] plus the readme it names): edits to tests,
# docs or devtools do not invalidate this layer.
COPY pyproject.toml README.md ./
COPY domain/ domain/
COPY adapters/ adapters/
COPY consumers/ consumers/
COPY schemas/ schemas/
RUN pip install --no-deps --no-build-isolation .
# The native per-record step (adapters.native), built with the locked maturin
# and native/Cargo.lock's crates; cargo needs a C linker.
COPY --from=rust-toolchain /usr/local/cargo /usr/local/cargo
COPY --from=rust-toolchain /usr/local/rustup /usr/local/rustup
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY native/ native/
RUN RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH \
    pip install --no-deps --no-build-isolation ./native

# What both images share: the venv and an unprivileged user.
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv
# Non-root. The home directory is the state directory, created here so that a
# named volume mounted on it starts out owned by this user.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/invoice-sm invoice-sm
USER invoice-sm
WORKDIR /var/lib/invoice-sm
ENV INVOICE_SM_STATE_DIR=/var/lib/invoice-sm

# Developer tools beside the service (owned by root, read-only for the user).
# They need nothing the service's lock does not already install.
FROM runtime AS devtools
COPY devtools/ /opt/devtools/devtools/
ENV PYTHONPATH=/opt/devtools
ENTRYPOINT ["python", "-m", "devtools"]
CMD ["--help"]

# Last, so that `docker build .` without --target makes the service image.
FROM runtime AS service
ENTRYPOINT ["invoice-sm"]
CMD ["--help"]
