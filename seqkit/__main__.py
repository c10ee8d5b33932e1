from .cli import main

if __name__ == "__main__":  # not when a worker process of `seqkit serve --workers` imports it
    main()
