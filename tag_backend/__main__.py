from .cli import main

if __name__ == "__main__":  # guard: spawned helper processes re-import the main module
    main()
