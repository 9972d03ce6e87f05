# The invoice-sm image: one console script, every command (process, deliver,
# run, wechat-sim, ...). compose.yaml runs it as several services.
#
#   docker build -t invoice-sm:local .
#   docker run --rm invoice-sm:local --help

# Build stage: install the project and its pinned dependencies into a venv,
# so the final image carries neither the sources nor pip's build leftovers.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what `pip install .` reads (the packages in pyproject.toml's
# [tool.setuptools.packages.find] plus the readme it names): edits to tests or
# docs do not invalidate this layer. tests/unit/test_compose.py checks the list.
COPY pyproject.toml README.md ./
COPY domain/ domain/
COPY adapters/ adapters/
COPY consumers/ consumers/
COPY schemas/ schemas/
COPY simulator/ simulator/
RUN pip install .

FROM python:3.11-slim
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
ENTRYPOINT ["invoice-sm"]
CMD ["--help"]
