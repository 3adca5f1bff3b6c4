import asyncio
from sitq import TaskQueue, AsyncWorker, SQLiteBackend, PickleSerializer

# 1. Define your async task function
async def say_hello(name: str):
    print(f"Hello, {name}")
    return f"Greetings, {name}!"

async def main():
    # 2. Set up the queue with a backend and serializer
    queue = TaskQueue(
        backend=SQLiteBackend(db_path="example_queue.db"),
        serializer=PickleSerializer()
    )

    # 3. Connect to the backend
    await queue.backend.connect()

    # 4. Enqueue a task and get its ID
    task_id = await queue.enqueue(say_hello, "World")
    print(f"Task {task_id} enqueued.")

    # 5. Start a worker to process the task
    worker = AsyncWorker(
        backend=queue.backend,
        serializer=PickleSerializer(),
        concurrency=5
    )

    # Run the worker for a short period to process the task
    await worker.start()
    await asyncio.sleep(1) # Allow time for the task to be processed
    await worker.stop()

    # 6. Retrieve the result
    result = await queue.get_result(task_id, timeout=5)
    if result:
        print(f"Result received: {result.status}")
        if result.status == "success":
            # The result value is serialized, so we need to load it
            value = queue.serializer.loads(result.value)
            print(f"Task return value: {value}")
    else:
        print("Did not receive result in time.")


    # 7. Clean up
    await queue.backend.close()

if __name__ == "__main__":
    asyncio.run(main())
